"""What people look at: plotly figures and the live widgets built on them (`figures`), tables for people
(`tables`), the training panels (`training_panel`), the static HTML report (`report`)."""
