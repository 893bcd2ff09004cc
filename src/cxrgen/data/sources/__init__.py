"""Download sources: each module has fetch(cfg, raw_dir, cache_dir) -> record (see cxrgen.data.download)."""
