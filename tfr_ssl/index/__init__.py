"""The index: exact and ScaNN searchers over item embeddings, their tuning and
their recall audit against exact search.
"""
