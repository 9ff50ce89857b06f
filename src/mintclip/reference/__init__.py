"""The official code's order of work for the methods whose fast path reorders it (TPT, C-TPT, MINT,
DynaPrompt): the same numbers by more work. They are the oracles of the tests and the yardsticks of
`mintclip bench`, kept apart so each method's own module holds one loop (docs/performance.md § Reference
orders of work). A method selects its reference order with the overrides it declares in
`Method.reference_overrides`; `data/reference_views.py` is the same idea for the views.
"""
