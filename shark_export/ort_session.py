"""The InferenceSession `shark_export.session` returns: ORT's own, whose `run` names the input when a feed has
the wrong dtype (ORT 1.31 says only `Unexpected input data type. Actual: (tensor(int32)) , expected:
(tensor(int64))`). Only a failed run is looked at: a run that succeeds costs nothing more."""

from __future__ import annotations

import onnxruntime as ort

from .ort_errors import wrong_input_dtype


class Session(ort.InferenceSession):
    """onnxruntime.InferenceSession whose failed runs name a mistyped input (`shark_export.session` registers our
    ops in it; a portable model's session needs none)."""

    def run(self, output_names, input_feed, run_options=None):
        try:
            return super().run(output_names, input_feed, run_options)
        except Exception as exc:  # noqa: BLE001 - only ORT's dtype complaint is rewritten
            error = wrong_input_dtype(self.get_inputs(), input_feed) if "input data type" in str(exc) else None
            if error is None:
                raise
            raise error from exc
