import torch

# The tests use tiny tensors: thread start-up costs more than it saves, and one thread keeps results repeatable.
torch.set_num_threads(1)
