"""The 14 CheXpert observations, in the order every label matrix uses.

Shared by the labeler (data), the models' finding heads (modeling) and the clinical metrics
(evaluation); no phase owns it, so none has to import another for it.
"""

OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
# Observations whose positive or uncertain label rules out "No Finding" (CheXpert: all but devices).
PATHOLOGIES = tuple(o for o in OBSERVATIONS if o not in (NO_FINDING, SUPPORT_DEVICES))
