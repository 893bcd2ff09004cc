"""Phase 3, the report generators: the two models (`models`), their training with the blank-image
control (`train`), the feature whitening both share (`whitening`), and batched greedy and beam
decoding (`decode`).
"""
