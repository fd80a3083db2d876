"""What is read back from rows: statistics, intervals, paired significance, the report, its figures and
`bench compare`. Imports no torch.
"""
