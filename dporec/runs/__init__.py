"""The run folder: each stage's folder and its lifecycle (lifecycle), what a stage recorded and what it was
built from (provenance), and the adapters a run holds (adapters). The folders themselves are the stages of
dporec.arms."""
