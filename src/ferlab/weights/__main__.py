"""python -m ferlab.weights RUN [--out PATH]: package a run's best model as the shipped default;
python -m ferlab.weights --ferplus RUN [--out PATH]: package a FER+ (8-class) run as the shipped ferplus model;
python -m ferlab.weights --robust RUN [--out PATH]: package a run as the shipped robust model (fp16);
python -m ferlab.weights --ensemble RUN RUN ... [--out PATH] [--data FER2013]: package runs as the ensemble;
python -m ferlab.weights --ensemble --ferplus RUN RUN ...: package FER+ runs as one ensemble, the ferplus model;
python -m ferlab.weights --unpack ENSEMBLE --out DIR: write each member of an ensemble as a checkpoint of its own."""
import argparse

from ..engine.package import package_ensemble, package_model, unpack_ensemble
from . import DEFAULT_WEIGHTS, ENSEMBLE_WEIGHTS, FERPLUS_WEIGHTS, ROBUST_WEIGHTS

p = argparse.ArgumentParser(prog="python -m ferlab.weights", description=__doc__)
p.add_argument("runs", nargs="+")
p.add_argument("--ensemble", action="store_true", help="package the runs as one ensemble (default: one run as "
                                                       "the default model)")
p.add_argument("--ferplus", action="store_true", help="package one FER+ run (8 classes), or with --ensemble "
                                                     "several, as the ferplus model")
p.add_argument("--robust", action="store_true", help="package one 7-class run as the robust model, in fp16")
p.add_argument("--out", help=f"where to write (default: {DEFAULT_WEIGHTS}, {FERPLUS_WEIGHTS}, {ROBUST_WEIGHTS} or "
                             f"{ENSEMBLE_WEIGHTS})")
p.add_argument("--unpack", action="store_true", help="write the members of one ensemble ('ensemble' or a .pt) "
                                                    "as checkpoints in the folder --out")
p.add_argument("--half", action="store_true", help="store one run's weights in fp16 (an ensemble's always are)")
p.add_argument("--data", help="FER2013, to fit the ensemble's temperature on PublicTest (default: the first run's)")
a = p.parse_args()


def main() -> None:
    if a.robust and (a.ferplus or a.ensemble or a.unpack):
        p.error("--robust packages one 7-class run; it goes with none of --ferplus, --ensemble, --unpack")
    if a.unpack:
        if len(a.runs) != 1 or not a.out or a.ensemble:
            p.error("--unpack takes one ensemble and --out DIR, the folder to write its members to")
        for path in unpack_ensemble(a.runs[0], a.out):
            print(path)
    elif a.ensemble:
        path, record = package_ensemble(a.runs, a.out or (FERPLUS_WEIGHTS if a.ferplus else ENSEMBLE_WEIGHTS), a.data,
                                        classes=8 if a.ferplus else 7)
        print(path, f"temperature {record['temperature']:.3f} on {record['faces']} PublicTest faces, NLL "
                    f"{record['nll_before']:.4f} -> {record['nll_after']:.4f}, ECE {record['ece_before']:.2f}% -> "
                    f"{record['ece_after']:.2f}%")
    elif len(a.runs) != 1:
        p.error("give one run for the default, ferplus or robust model, or --ensemble with several")
    elif a.robust:
        print(package_model(a.runs[0], a.out or ROBUST_WEIGHTS, classes=7, half=True))
    else:
        print(package_model(a.runs[0], a.out or (FERPLUS_WEIGHTS if a.ferplus else DEFAULT_WEIGHTS),
                            classes=8 if a.ferplus else 7, half=a.half))


try:
    main()
except (ValueError, OSError) as e:  # one line, not a traceback: what was wrong and what was expected
    p.exit(1, f"python -m ferlab.weights: error: {e}\n")
