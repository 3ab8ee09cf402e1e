# Cross-compiling for linux-aarch64 with Debian's cross toolchain (apt-get install g++-aarch64-linux-gnu).
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64-linux-gnu.cmake
# The compilers default to aarch64-linux-gnu-gcc/g++ on PATH; set SHARK_AARCH64_TRIPLE (environment) for
# another triple prefix, or CMAKE_C_COMPILER / CMAKE_CXX_COMPILER on the command line for other compilers.
# Run the results under qemu-user: qemu-aarch64 -L /usr/aarch64-linux-gnu <program> (tools/check_aarch64.sh).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(DEFINED ENV{SHARK_AARCH64_TRIPLE} AND NOT "$ENV{SHARK_AARCH64_TRIPLE}" STREQUAL "")
  set(_shark_triple "$ENV{SHARK_AARCH64_TRIPLE}")
else()
  set(_shark_triple aarch64-linux-gnu)
endif()

if(NOT CMAKE_C_COMPILER)
  set(CMAKE_C_COMPILER ${_shark_triple}-gcc)
endif()
if(NOT CMAKE_CXX_COMPILER)
  set(CMAKE_CXX_COMPILER ${_shark_triple}-g++)
endif()

# Debian's multiarch cross sysroot (libc6-dev-arm64-cross and friends install into /usr/<triple>).
set(CMAKE_FIND_ROOT_PATH /usr/${_shark_triple})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
