#!/usr/bin/python3
"""Builds the online-tuning drift test's model at build time: a clean run of
the plant long enough to cover its operating points (12000 rows) and a
training schedule long enough (20 + 2 epochs) that the model raises few false
alarms on unseen clean runs (0.2 % of rows on seed 23), so that the false
alarms after a drift are the drift's, not the model's.  About 30 s of CPU.

usage: make_tune_model.py FAULTLINE CONFIG OUT_MODEL
"""
import os
import subprocess
import sys
import tempfile

fl, config, model = sys.argv[1:4]
with tempfile.TemporaryDirectory() as tmp:
    cfg = os.path.join(tmp, "tune.ini")
    with open(config) as f:
        text = f.read()
    with open(cfg, "w") as f:
        f.write(text + "\n[train]\nepochs1 = 20\nepochs2 = 2\n")
    train = os.path.join(tmp, "train.csv")
    subprocess.run([fl, "simulate", "--rows", "12000", "--seed", "1", "--anomalies", "0",
                    "--out", train], check=True)
    subprocess.run([fl, "train", "--config", cfg, "--data", train, "--out", model, "--quiet"],
                   check=True)
