import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py
torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
