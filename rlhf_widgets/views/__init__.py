"""What people look at: static plotly figures (`run_figures`, `reward_figures`; their panels in `stage_views` and
`traces`, their look in `style`), the live widgets built on them (`dashboard`, `run_comparison`, `samples`; the shared
live machinery in `live`), tables for people (`tables`), the training panels (`training_panel`), the static HTML
report (`report`)."""
