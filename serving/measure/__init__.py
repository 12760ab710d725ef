"""What this machine measures for the policy: an engine's step cost over batch sizes x contexts (costmodel), the KV
memory a batch may take (memory), the continuous pool's size (slots), and the tuner that ties them to a predictor's
held-out errors for a command (autotune)."""
