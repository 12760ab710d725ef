"""The scheduling policy, pure (no torch, no numpy): the paper's plan (scheduler), admission on continuous engines
(admission, with KV reservations), the simulators (simulate: static batches; simulate_kv: a continuous engine, vLLM's
paged cache or our padded pool, with or without a KV bound; simulate_continuous: our pool's FCR passes), the
step-cost model they read (stepcost) and the searches over them (tuning and workload: static batches on the served
requests; kv_tuning: admission rule and order)."""
