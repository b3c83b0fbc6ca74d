"""What a run leaves for people: the released summary and the human report (Markdown, PNG).

Written by the coordinator in a deployment and by the harness in a simulation; it reads only what the
sites released (``metrics.json``) and, in a simulation, what the harness adds.
"""
