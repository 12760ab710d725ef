"""The scheduling policy, pure (no torch, no numpy): the paper's plan (scheduler), admission on continuous engines
(admission, with KV reservations), the simulators (simulate: static batches, simulate_continuous: our pool,
simulate_kv: a KV-bounded engine), the step-cost model they read (stepcost) and the searches over them (tuning and
workload: static batches on the served requests; kv_tuning: admission rule and order)."""
