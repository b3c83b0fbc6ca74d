"""What a site enforces and remembers: its policy, the plan it makes of each job, its ledger of
budgets, reservations and charges, its hash-chained audit log, the replies it released, and the guard
that answers every message only inside the plan. No Flower, no torch: the site's rules in one place.
"""
