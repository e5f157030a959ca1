"""Answer evaluation (issue #8): golden questions through the whole ask pipeline in an isolated index,
scored for retrieval, citations, facts, refusals, injections, latency and cost, one or two configurations
(prompt version + model chain) side by side. `manage.py evaluate_answers` is the entry point.
"""
