"""Run in a fresh Python process by test_muon: rebuild the model and "muon" optimizer, load the checkpoint (with
weights_only=True, as the Hugging Face Trainer does) and continue training on the remaining batches.

argv: input file (model state, optimizer state_dict, remaining batches), output file (the final parameters).
"""

import sys

import torch
from test_muon import make_model, train

import optarena

if __name__ == "__main__":
    payload = torch.load(sys.argv[1], weights_only=True)
    torch.set_num_threads(payload["threads"])
    model = make_model(payload["kind"])
    model.load_state_dict(payload["model"])
    optimizer = optarena.create_optimizer(model, "muon", lr=1e-2, weight_decay=0.1)
    optimizer.load_state_dict(payload["optimizer"])
    train(model, [optimizer], payload["kind"], payload["batches"])
    torch.save([p.detach() for p in model.parameters()], sys.argv[2])
