"""Built-in radiomics configuration presets (YAML files; a package so that wheels ship them)."""
