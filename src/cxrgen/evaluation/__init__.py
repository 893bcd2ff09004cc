"""Phase 4, evaluation: text and clinical scores with bootstrap intervals (`scores`), the constant and
retrieval floors (`floors`), scoring a model on the test split (`evaluate`), the models-beside-floors
table (`compare`) and the summary over seeds (`seeds`).
"""
