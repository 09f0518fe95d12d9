"""TCIA: task-centric instruction augmentation (tcia.md), one module per step.

state (the instruction space) -> decompose (step 1) -> database (2) -> search (3) ->
compose (4) -> validate (5) -> respond (6); pipeline runs them end to end.
"""
