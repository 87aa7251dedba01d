import torch

# Tests run beside other processes on small machines: one intra-op thread keeps small
# convolutions from fighting over cores (and keeps timings out of the results).
torch.set_num_threads(1)
