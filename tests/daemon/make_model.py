#!/usr/bin/python3
"""Builds the daemon tests' model at build time: simulates a clean run of
the plant, trains a quick model on it with config/faultline.ini (fewer
epochs), and simulates a second, unseen clean run for the tests to stream.

usage: make_model.py FAULTLINE CONFIG OUT_MODEL OUT_EPISODE_CSV OUT_CONFIG
OUT_CONFIG is CONFIG with the quick training settings, for the tests to
derive their daemon configurations from.
"""
import os
import subprocess
import sys
import tempfile

# The build's test model is always trained as configured, also when a build
# runs under the README test's quick mode (FAULTLINE_QUICK=1 caps epochs).
os.environ.pop("FAULTLINE_QUICK", None)

fl, config, model, episode, out_config = sys.argv[1:6]
with open(config) as f:
    text = f.read()
with open(out_config, "w") as f:
    f.write(text + "\n[train]\nepochs1 = 10\nepochs2 = 3\n")
with tempfile.TemporaryDirectory() as tmp:
    train = os.path.join(tmp, "train.csv")
    subprocess.run([fl, "simulate", "--rows", "6000", "--seed", "1", "--anomalies", "0",
                    "--out", train], check=True)
    subprocess.run([fl, "train", "--config", out_config, "--data", train, "--out", model,
                    "--quiet"], check=True)
subprocess.run([fl, "simulate", "--rows", "1200", "--seed", "7", "--anomalies", "0",
                "--out", episode], check=True)
