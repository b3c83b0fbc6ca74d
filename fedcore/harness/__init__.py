"""The one-machine harness: what only a simulation runs (a hospital's node never imports it).

It loads an app, prepares every site's state in one run directory, runs the job on Flower's
simulation engine (``runner``) or on the in-process loop (``loop``), and adds what only a process
holding every site's rows can compute: the final model's scores, the local-only and pooled baselines,
the membership attack (``baselines``, ``summary``); ``statistics`` does the same for a query batch.
"""
