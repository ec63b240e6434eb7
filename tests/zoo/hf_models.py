def hf_entries():
    return []
