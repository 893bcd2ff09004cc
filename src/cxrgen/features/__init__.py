"""Phase 2, image features: DenseNet121 (CheXNet, an ImageNet weight file, or seeded random weights)
run once over every prepared image, cached as one array file per split (`densenet`).
"""
