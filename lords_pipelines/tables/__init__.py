"""The paper's tables: one spec per table under ``conf/tables/``, the runners that fill them and the renderers."""
