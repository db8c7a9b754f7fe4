"""python -m ferlab.weights RUN [--out PATH]: package a run's best model as the shipped default."""
import argparse

from . import DEFAULT_WEIGHTS, package_model

p = argparse.ArgumentParser(prog="python -m ferlab.weights", description=package_model.__doc__)
p.add_argument("run")
p.add_argument("--out", default=str(DEFAULT_WEIGHTS))
a = p.parse_args()
print(package_model(a.run, a.out))
