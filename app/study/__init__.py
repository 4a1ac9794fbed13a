"""Parameter studies: ``plan`` reads a study file and plans its trials, ``tuning``
runs them (through Keras Tuner, one ordinary training run per trial, resumable and
shareable between workers) and ``tables`` writes study.csv, study.md and study.png."""
