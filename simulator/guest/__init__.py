"""The guest kernel's side of translation: its stage-1 page tables, built on demand."""
