"""Phase 5, the report assistant: a report for new image files (`generate`), the `cxrgen` command
(`cli`), the Streamlit app (`app`) and pictures of where the attention model looked
(`attention_maps`).
"""
