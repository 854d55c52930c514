"""The model: feature encoders and towers, the retrieval task with its
sampling-bias correction, the item SSL task and its views, the main task's
dropout, the optimizer, and the two-tower model that wires them.
"""
