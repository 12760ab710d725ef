"""`seqsched server`: an OpenAI-compatible service (chat and text completions, the Files and Batch APIs) in which
interactive requests and batch-job lines join one length-aware queue in front of one engine.

Modules, one job each: config (the command's options), queue (the pure release policy), worker (the thread that
owns the engine), predict (the length predictor behind a batching thread), store (files on disk + a sqlite index),
jobs (the batch lifecycle), protocol and objects (OpenAI request parsing and response shapes), errors (OpenAI's
error body), security (API key, body limits), metrics (Prometheus text), service (wires them), app (thin FastAPI
routes) and command (`seqsched server`).
"""
