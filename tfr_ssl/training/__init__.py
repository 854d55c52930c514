"""Training: the loop over a workdir (checkpoints, best epoch, resume), the
workdir contract and its lock, warm starts, and tf.distribute strategies and
worker roles.
"""
