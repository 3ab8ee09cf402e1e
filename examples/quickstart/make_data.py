"""Train the quickstart model for a few steps and write the files the command-line quickstart uses:
model.pt (state_dict), example.pt (one batch), cal.pt / cal_labels.pt (a list of batches and one label tensor
per batch), test.pt / test_labels.pt."""

import torch

from mymodel import build, make_batch

generator = torch.Generator().manual_seed(0)
model = build()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
for _ in range(60):
    inputs, clicks = make_batch(512, generator)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(*inputs), clicks)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()

calibration = [make_batch(512, generator) for _ in range(4)]
test = [make_batch(512, generator) for _ in range(2)]
torch.save(model.state_dict(), "model.pt")
torch.save(calibration[0][0], "example.pt")
torch.save([inputs for inputs, _ in calibration], "cal.pt")
torch.save([clicks for _, clicks in calibration], "cal_labels.pt")
torch.save([inputs for inputs, _ in test], "test.pt")
torch.save([clicks for _, clicks in test], "test_labels.pt")
print(f"trained (last loss {loss.item():.3f}); wrote model.pt, example.pt, cal.pt, cal_labels.pt, test.pt, test_labels.pt")
