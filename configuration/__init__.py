"""Model presets as data: one JSON per model, each naming the upstream source it transcribes.

Installed as `modeling_illada.configuration`; read them with `modeling_illada.load_preset(name)`.
"""
