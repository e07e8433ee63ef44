"""``autofact fit DATA --out MODEL``: fit, save, report."""

from __future__ import annotations

import argparse
import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import options as o
from .common import (
    ExitStatus,
    UsageError,
    imports_done,
    metrics_table,
    plot_history,
    print_json,
    say,
)
from .paths import check_checkpoint_folder, check_distinct, check_output, same_file

#: --solver's choices: 'auto', autofact.solvers.SOLVERS and the ranking task's 'cg', written
#: out so that parsing the command line imports no torch (issue 10; a test holds them equal)
SOLVER_CHOICES = ("auto", "gd", "adam", "sgd", "lbfgs", "als", "gibbs", "cg")


def register(sub: Any) -> None:
    p = sub.add_parser("fit", help="fit a model and save it",
                       description="Fit a model on DATA and save it to --out; with a test set, "
                       "report RMSE, MAE and top-k ranking metrics. Ctrl-C saves the model of "
                       "the last finished epoch.")
    p.add_argument("data", metavar="DATA", type=o.existing_data,
                   help="ratings file: CSV/TSV/Parquet/MovieLens (user, item, rating[, time]), "
                   "or a folder of such part files")
    test = p.add_mutually_exclusive_group()
    test.add_argument("--test", type=o.existing_data, metavar="FILE",
                      help="held-out ratings (a file or a folder of part files): validation "
                      "RMSE per epoch and final metrics")
    test.add_argument("--test-fraction", type=o.fraction, metavar="F",
                      help="hold out this fraction of DATA (seeded by --seed) as the test set")
    p.add_argument("--out", "-o", type=o.output_path, required=True, metavar="MODEL",
                   help="where to save the fitted model (e.g. model.npz); an existing file is "
                   "replaced only if it is an autofact model")
    hp = p.add_argument_group("model (defaults: those of autofact.MatrixFactorization)")
    hp.add_argument("--rank", type=o.rank,
                    help="number of latent factors, or auto (default: 10, or 64 with --task "
                    "ranking)")
    hp.add_argument("--task", choices=("rating", "ranking"),
                    help="rating: predict ratings (default); ranking: top-N recommendation from "
                    "implicit feedback (implicit-feedback ALS, or --loss bpr/warp)")
    hp.add_argument("--alpha", type=o.nonnegative_float,
                    help="--task ranking: confidence 1 + alpha * rating (default 0.5)")
    hp.add_argument("--loss", type=o.loss,
                    help="squared, absolute, huber, logistic, poisson, or module:function; with "
                    "--task ranking: squared (implicit ALS, default), bpr or warp")
    hp.add_argument("--reg", type=o.regularization, metavar="REG",
                    help="regularization: l2, l1, none, or module:function (default l2)")
    hp.add_argument("--beta", type=o.nonnegative_float, help="regularization strength")
    hp.add_argument("--unobserved-weight", type=o.nonnegative_float, metavar="W",
                    help="--task rating: count every unrated pair as a rating of 0 with this "
                    "weight (implicit feedback's term: better top-N, worse RMSE; default 0)")
    hp.add_argument("--solver", choices=SOLVER_CHOICES,
                    help="training algorithm (default auto; cg: --task ranking's default, three "
                    "conjugate-gradient steps a row)")
    hp.add_argument("--epochs", type=o.positive_int, help="passes over the data")
    hp.add_argument("--lr", type=o.positive_float, help="learning rate (first-order solvers)")
    hp.add_argument("--batch-size", type=o.positive_int, help="mini-batch size (adam, sgd)")
    hp.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                    help="learn a global mean and user/item biases (default: yes)")
    hp.add_argument("--implicit", action=argparse.BooleanOptionalAction, default=None,
                    help="SVD++'s implicit term: each user's factor also learns from which "
                    "items they rated (solvers gibbs, lbfgs, adam, gd; default: no)")
    hp.add_argument("--seed", type=o.nonnegative_int, help="random seed (default 0)")
    hp.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    hp.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    hp.add_argument("--params", type=o.existing_file, metavar="JSON",
                    help="settings written by 'autofact tune' (or a JSON object of "
                    "MatrixFactorization parameters); options given here take precedence")
    stop = p.add_argument_group("early stopping")
    stop.add_argument("--validation-fraction", type=o.fraction, metavar="F",
                      help="hold out this fraction of DATA (seeded by --seed) to stop when its "
                      "RMSE has not improved for --patience epochs; the best epoch is kept")
    stop.add_argument("--patience", type=o.positive_int, metavar="N",
                      help="epochs without a better validation RMSE before stopping (default "
                      "max(5, epochs / 10) with --validation-fraction; without it, a given "
                      "--patience stops on --test)")
    run = p.add_argument_group("checkpoints and faults")
    run.add_argument("--checkpoint", type=o.output_path, metavar="DIR",
                     help="write the training state to DIR/checkpoint.npz every "
                     "--checkpoint-every epochs (sweeps of the default sampler), at the end and "
                     "on Ctrl-C; the same command again resumes from it (other data or "
                     "settings are refused)")
    run.add_argument("--checkpoint-every", type=o.positive_int, metavar="K",
                     help="epochs between checkpoints (default 1; needs --checkpoint)")
    run.add_argument("--timeout", type=o.positive_float, metavar="SECONDS",
                     help="under torchrun: how long a process waits for a silent peer before "
                     "the fit stops, naming its rank (default 300)")
    o.add_ratings_options(p)
    p.add_argument("--k", type=o.positive_int, default=10, help="k of the @k metrics (10)")
    p.add_argument("--threshold", type=o.finite, default=4.0,
                   help="a test rating >= this is relevant for the @k metrics (4)")
    p.add_argument("--plot", type=o.output_path, metavar="IMAGE",
                   help="write the learning curve (loss, validation RMSE) to this .png, .pdf "
                   "or .svg")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    o.add_common(p)
    p.set_defaults(func=fit, imports_done_by_verb=True)  # issue 10: see fit()


def fit(args: argparse.Namespace) -> ExitStatus:
    """Fit a model on DATA, save it to --out, report metrics on a test set if one is given."""
    inputs = {"DATA": args.data, "--test": args.test, "--params": args.params}
    check_output(args.out, "--out", "model", inputs)
    if args.plot is not None:
        check_output(args.plot, "--plot", "plot", inputs)
        check_distinct({"--out": args.out, "--plot": args.plot})

    if args.checkpoint_every is not None and args.checkpoint is None:
        raise UsageError("--checkpoint-every needs --checkpoint DIR (where to write them)")
    if args.checkpoint is not None:  # trust: one that cannot be written fails now, not later
        check_checkpoint_folder(args.checkpoint)
    if args.checkpoint is not None:  # issue 8: the model never replaces the checkpoint, ...
        from ..checkpoint import FILE_NAME

        check_distinct({"--out": args.out, "--plot": args.plot,
                        "--checkpoint": args.checkpoint / FILE_NAME})
        for name, other in inputs.items():  # ... nor does a checkpoint join a folder of parts
            if other is not None and other.is_dir() and os.path.realpath(other) == \
                    os.path.realpath(args.checkpoint):
                raise UsageError(
                    f"--checkpoint {str(args.checkpoint)!r} is the input folder {name}, whose "
                    f"files are all read as ratings: give another folder for {FILE_NAME}"
                )

    if args.test is not None and same_file(Path(os.path.realpath(args.test)), args.data):
        # trust: the metrics of a model on its own training ratings read as held-out ones
        say(f"warning: --test {str(args.test)!r} is DATA itself: the metrics below are on the "
            "training ratings, not held-out ones; pass a separate test file or --test-fraction")
    shared = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by torchrun
    # issue 10 (cold start): a plain DATA file is parsed on another thread (pyarrow, without
    # the GIL) while torch is imported below
    pending = None if shared else o.read_later(args.data, args)

    from ..evaluation import evaluate, random_split
    from ..model import MatrixFactorization
    from ..sharding import PeerLostError

    imports_done()  # torch's import is over: collect garbage again (issue 10)

    @functools.cache
    def file_params() -> dict[str, Any]:
        """--params' settings, read once (the reading under torchrun needs its dtype)."""
        from ..tuning import read_params

        return {} if args.params is None else read_params(args.params)

    main_process = True
    if shared:  # issue 11: each process reads its own share of DATA
        from .. import distributed

        for flag, value in (("--test-fraction", args.test_fraction),
                            ("--validation-fraction", args.validation_fraction)):
            if value is not None:
                raise UsageError(
                    f"{flag} is not available under torchrun: each process reads only its own "
                    "share of DATA, so it would hold out another share; split the data "
                    "beforehand and pass --test FILE"
                )
        distributed.init(timeout=args.timeout)
        main_process = distributed.is_main_process()
        # issue 11: als and the sampler (what auto picks here, as in one process) need every
        # rating of a user on one process: a folder of parts is then read by user (each
        # process reads every part, keeps its users); checkpointed or not (issue 11)
        # (and mini-batches, issue 11, item 2: each process's batches are its users' ratings)
        def setting(name: str) -> Any:
            """A setting as the fit will take it: the command line's, else --params'."""
            given = getattr(args, name)
            return file_params().get(name) if given is None else given

        by_user = setting("solver") in (None, "auto", "als", "gibbs", "sgd") \
            or setting("batch_size") is not None
        # issue 11 (memory): a float32 fit (the default) shares float32 values read as such:
        # 12 bytes a rating held instead of 16, and no float32 copy in the objective
        values = "float32" if setting("dtype") in (None, "float32") else None
        reader = functools.partial(distributed.read_local, dtype=values,
                                   split="users" if by_user else "auto")
        try:
            train = o.read_ratings(args.data, args, reader=reader)
        except BaseException:
            distributed.shutdown(wait=False)
            raise
    else:
        assert pending is not None
        train = pending()
    test = None
    if args.test is not None:
        # (its ids are matched to the training data's by their text by the model's index)
        test = o.read_ratings(args.test, args)
    elif args.test_fraction is not None:
        seed = 0 if args.seed is None else args.seed
        train, test = random_split(train, args.test_fraction, seed=seed)
    given = {
        "rank": args.rank, "task": args.task, "alpha": args.alpha, "loss": args.loss,
        "regularization": args.reg, "beta": args.beta,
        "unobserved_weight": args.unobserved_weight,
        "solver": args.solver, "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "bias": args.bias, "implicit": args.implicit,
        "seed": args.seed,
        "device": args.device, "dtype": args.dtype,
    }
    params: dict[str, Any] = {}
    if args.params is not None:
        params.update(file_params())
    params.update({k: v for k, v in given.items() if v is not None})
    # early stopping only on data carved from DATA, or on --test when --patience asks for it
    # (by default the test set only reports: nothing is chosen on it)
    if args.validation_fraction is not None:
        params["validation_fraction"] = args.validation_fraction
    if args.patience is not None:
        params["patience"] = args.patience
    from ..ranking import PAIRWISE_LOSSES

    if params.get("loss") in PAIRWISE_LOSSES and params.get("task") != "ranking":
        # trust: the library's message named the rating losses only, not --task ranking
        raise UsageError(
            f"--loss {params['loss']} is a pairwise ranking loss: add --task ranking, or choose "
            "a rating loss (squared, absolute, huber, logistic, poisson)"
        )
    # trust: options that change nothing here were taken in silence
    if args.alpha is not None and params.get("task") != "ranking":
        raise UsageError(
            f"--alpha {args.alpha:g} is the ranking task's confidence (1 + alpha * rating) and "
            "changes nothing in a rating model: add --task ranking, or leave out --alpha"
        )
    if args.patience is not None and params.get("task") == "ranking":
        raise UsageError(
            f"--patience {args.patience} stops on a validation RMSE, which a ranking model "
            "(--task ranking) has none of: leave out --patience"
        )
    if args.patience is not None and params.get("validation_fraction") is None and test is None:
        raise UsageError(
            f"--patience {args.patience} stops on held-out ratings, and this fit has none: "
            "pass --validation-fraction F (or --test FILE), or leave out --patience"
        )
    if args.timeout is not None and not shared:
        say(f"warning: --timeout {args.timeout:g} applies under torchrun only (how long a "
            "process waits for a silent peer); this fit runs in one process")
    if "patience" not in params and params.get("validation_fraction") is None:
        params["patience"] = None
    validation = test if params.get("validation_fraction") is None else None
    model = MatrixFactorization(verbose=not args.quiet and main_process, **params)
    saving: dict[str, Any] = {} if args.checkpoint is None else {
        "checkpoint": args.checkpoint, "checkpoint_every": args.checkpoint_every or 1}
    start = time.perf_counter()
    if shared:
        try:
            # issue 11, item 3: rank 0 gets the seen items of the test set's users only (for
            # its top-k metrics); the model file gets every user's from distributed.save
            distributed.fit(model, train, validation=validation, local=True,
                            gather_seen=False if test is None else test.user_ids, **saving)
            seconds = time.perf_counter() - start
            n_train, train_rmse = _shared_totals(model, train)  # over every process's share
            _save(model, args.out, args.checkpoint,
                  saver=functools.partial(distributed.save, model))  # on every process
        except PeerLostError as exc:  # issue 11: a peer was killed or froze: name it, exit 1
            distributed.shutdown(wait=False)
            where = f" (checkpoints: {args.checkpoint})" if saving else ""
            say(f"error: {exc}{where}")
            return ExitStatus.ERROR
        except BaseException:
            distributed.shutdown(wait=False)
            raise
        distributed.shutdown()  # every process is done with collective work: leave together
    else:
        try:
            # a ranking model has no validation RMSE: its test set is scored by evaluate below
            model.fit(train, validation=validation if model.task == "rating" else None, **saving)
        except KeyboardInterrupt:
            return _save_interrupted(model, args.out, args.checkpoint)
        seconds = time.perf_counter() - start
        n_train = len(train)
    if not main_process:  # every process holds the same model; the first one reports it
        return ExitStatus.OK
    # score() is higher-is-better: the negative RMSE; a ranking model predicts scores, so
    # neither its RMSE nor its MAE means anything (issue 12). Issue 10 (cold start): its
    # predictions start on another thread while the model is saved
    rmse = _start_training_rmse(model, train) if not shared and model.task == "rating" \
        else None
    if not shared:
        _save(model, args.out, args.checkpoint)
    try:
        metrics = evaluate(model, test, k=args.k, threshold=args.threshold) if test is not None \
            else None
        if not shared:
            train_rmse = rmse() if rmse is not None else None
        if args.plot is not None:
            plot_history(model.history_, args.plot, f"autofact fit {Path(args.data).name}")
    except KeyboardInterrupt:
        say(f"interrupted after the model was saved to {args.out}")
        return ExitStatus.INTERRUPTED
    summary = {
        "model": str(args.out),
        "train": {"users": train.n_users, "items": train.n_items, "ratings": n_train},
        "rank": model.rank_,
        "solver": model.solver_,
        "epochs": model.n_epochs_,
        "seconds": round(seconds, 3),
        "history": model.history_,
        "train_rmse": train_rmse,
        "metrics": metrics,
        "plot": None if args.plot is None else str(args.plot),
    }
    if args.json:
        print_json(summary)
        return ExitStatus.OK
    print(
        f"fitted rank {model.rank_} ({model.solver_}, {model.n_epochs_} epochs, {seconds:.1f} s) "
        f"on {n_train} ratings ({train.n_users} users x {train.n_items} items)"
    )
    print(f"saved model to {args.out}")
    if args.plot is not None:
        print(f"wrote learning curve to {args.plot}")
    if metrics is None and train_rmse is None:
        print("for held-out top-k metrics pass --test FILE or --test-fraction 0.2")
    elif metrics is None:
        print(f"training RMSE {train_rmse:.4f}; for held-out metrics pass --test FILE or "
              "--test-fraction 0.2")
    else:
        print()
        print(metrics_table(metrics))
    return ExitStatus.OK


#: Ratings a block of the training RMSE's predictions: a multiple of the blocks in which the
#: model's index computes scores (``autofact.index``, 2**16), so each score is computed as in
#: one call over all the ratings, to the last bit
_RMSE_BLOCK = 1 << 16


def _training_rmse(model: Any, train: Any) -> float:
    """``-model.score(train)``: the RMSE of predict on the training ratings. When the model was
    fitted on these very ratings (its index holds their id maps and every one of them), their
    indices are the model's own, so no id is looked up (issue 10, cold start: the lookup costs
    a pandas import); the same predictions, the same number."""
    return _start_training_rmse(model, train, helper=False)()


def _start_training_rmse(model: Any, train: Any, *, helper: bool = True) -> Callable[[], float]:
    """:func:`_training_rmse`, started: returns the function that finishes it and returns the
    number (or raises the error).

    Issue 10 (cold start): on the fast path the predictions are computed block by block
    (:data:`_RMSE_BLOCK` ratings) by a helper thread, started here, and by the caller's thread
    once it calls the function (``autofact fit`` saves the model meanwhile); numpy's gathers and
    products run without the GIL. No helper where the thread cap is 1
    (``AUTOFACT_NUM_THREADS=1``, one usable core: :func:`autofact.threads.max_threads`). Each
    block's scores are those of one call over all the ratings, and the RMSE is taken over them
    in one pass, as before: the same number, to the last bit. Otherwise (the model was not
    fitted on these ratings) ``-model.score(train)`` runs when the function is called, in the
    caller's thread (its warnings are the caller's)."""
    import numpy as np

    from ..threads import max_threads

    index = model.index_
    if not (index.user_ids is train.user_ids and index.item_ids is train.item_ids
            and int(index.user_counts.sum()) == len(train)):
        return lambda: float(-model.score(train))
    n = len(train)
    raw = np.empty(n, dtype=np.float64)
    blocks = iter(range(0, n, _RMSE_BLOCK))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while True:
                with lock:
                    s = next(blocks, None)
                if s is None or errors:
                    return
                e = s + _RMSE_BLOCK
                raw[s:e] = model.predict_indices(train.users[s:e], train.items[s:e])
        except Exception as exc:  # the helper's: raised by finish(), in the caller's thread
            errors.append(exc)

    thread = None
    if helper and n > _RMSE_BLOCK and max_threads() > 1:  # the thread cap (autofact.threads)
        thread = threading.Thread(target=work, name="autofact-rmse", daemon=True)
        thread.start()

    def finish() -> float:
        work()
        if thread is not None:
            thread.join()
        if errors:
            raise errors[0]
        pred = index.response(raw)
        return float(np.sqrt(np.mean((pred - train.values) ** 2)))

    return finish


def _shared_totals(model: Any, train: Any) -> tuple[int, float | None]:
    """Under torchrun (issue 11): the number of training ratings and the training RMSE over
    every process's share (each process calls it, on its own share)."""
    import numpy as np
    import torch

    from ..sharding import TorchShardPlan

    sse = 0.0
    if model.task == "rating":  # score()'s rule: the RMSE of predict
        pred = model.predict(train.user_ids[train.users], train.item_ids[train.items])
        sse = float(np.sum((pred - train.values) ** 2))
    totals = torch.tensor([sse, float(len(train))], dtype=torch.float64)
    TorchShardPlan().all_sum([totals])
    n = int(totals[1])
    # float() first: np.sqrt of a torch tensor warned (NumPy 2's __array_wrap__ deprecation)
    return n, (float(np.sqrt(float(totals[0]) / n)) if model.task == "rating" else None)


def _save_interrupted(model: Any, out: Path, checkpoint: Path | None = None) -> ExitStatus:
    """Ctrl-C during training (issue 8): save the model of the last finished epoch, if any
    (and say where the checkpoint to resume from is, issue 11)."""
    done = int(getattr(model, "n_epochs_", 0) or 0) if hasattr(model, "user_factors_") else 0
    if checkpoint is not None and done >= 1:
        say(f"the checkpoint in {checkpoint} holds epoch {done}; run the same command again to "
            "resume from it")
    if done < 1:
        say(f"interrupted before the first epoch finished; nothing saved to {out}")
        return ExitStatus.INTERRUPTED
    if out.exists():
        # trust (never lost data): a part-trained model does not replace the one --out holds
        # from an earlier run; it goes beside it
        beside = out.with_name(f"{out.stem}.interrupted{out.suffix}")
        _save(model, beside, checkpoint)
        say(f"interrupted during epoch {done + 1}; saved the model of epoch {done} to {beside} "
            f"({out}, from an earlier run, is left as it was)")
        return ExitStatus.INTERRUPTED
    _save(model, out, checkpoint)
    say(f"interrupted during epoch {done + 1}; saved the model of epoch {done} to {out}")
    return ExitStatus.INTERRUPTED


def _save(model: Any, out: Path, checkpoint: Path | None = None,
          saver: Callable[[Path], Any] | None = None) -> None:
    """Save ``model`` to ``out`` (``saver``: instead of ``model.save``, e.g.
    ``distributed.save``, which every process calls)."""
    _check_finite(model, out, checkpoint)
    model.set_params(verbose=False)  # a loaded model stays quiet unless asked
    try:
        (model.save if saver is None else saver)(out)
    except OSError as exc:  # disk full, read-only folder: name --out, not the temporary file
        raise OSError(exc.errno, f"cannot write the model to --out ({exc.strerror or exc})",
                      str(out)) from exc


def _check_finite(model: Any, out: Path, checkpoint: Path | None) -> None:
    """Refuse to save a model whose factors or biases are not all finite (trust): the fit
    itself stops on a non-finite objective, but a damaged checkpoint resumed from (a nan in its
    running sums) ended with exit 0, "training RMSE nan", and a model file that
    ``autofact.load`` then refused as damaged."""
    import numpy as np

    from ..errors import FitError
    from ..io import first_non_finite

    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        where = first_non_finite(np.asarray(getattr(model, name, np.zeros(0))))
        if where is not None:
            hint = (f"; the checkpoint it resumed from may be damaged: delete {checkpoint} to "
                    "start over, or" if checkpoint is not None else "; the fit diverged:")
            raise FitError(
                f"the fitted model's {name.rstrip('_')} holds non-finite values (first at "
                f"{where}); it was not saved to {out}{hint} try a smaller --lr, a larger "
                "--beta, --solver als or --dtype float64"
            )
