"""`hourglass predict`: marks for DICOM files from TF Serving (gRPC or REST) or a local SavedModel."""

from __future__ import annotations

import argparse
import json
import sys

from keras_hourglass.cli import argtypes
from keras_hourglass.errors import escape_controls
from serving.contract import DETECT_PNG, IMAGE_SIGNATURES, SERVING_DEFAULT

EPILOG = """\
examples:
  # no server: run the exported SavedModel in this process
  hourglass predict --saved-model serving/hourglass/1 exam/*.dcm
  # TF Serving gRPC (port 8500), a pinned version, overlays
  hourglass predict --grpc localhost:8500 --version 3 --overlay-dir overlays exam/L_CC.dcm
  # TF Serving REST (port 8501); sends a 16-bit PNG (signature detect_png)
  hourglass predict --rest http://localhost:8501 --threshold 0.5 exam/L_CC.dcm
  # results as DICOM for the PACS: a Structured Report and a presentation state per image
  hourglass predict --grpc localhost:8500 --dicom-sr out/sr --dicom-pr out/pr exam/*.dcm
  # TLS: gRPC with a private CA and a client certificate; REST over https with a CA bundle
  hourglass predict --grpc tfs.example:8500 --ca-cert ca.pem --client-cert me.pem --client-key me.key exam/L_CC.dcm
  hourglass predict --rest https://tfs.example:8501 --ca-cert ca.pem exam/L_CC.dcm
  # the canary version, at the threshold evaluation measured for 4.8 false marks per image
  hourglass predict --grpc localhost:8500 --label canary --operating-point 4.8 exam/L_CC.dcm

The client first reads the model version's contract (signature `metadata`)
and preprocesses exactly as it says (long side, windowing, orientation).
Prints JSON: the model version that answered, the preprocessing and threshold
used, and per file marks with x, y (ORIGINAL DICOM pixels; x = column),
score, and image_x, image_y (preprocessed image pixels). Default signature:
serving_default for --saved-model/--grpc, detect_png for --rest (a PNG is far
smaller than a JSON float array). A bad DICOM is reported in the results
and on stderr, the other files still run, and the exit code is 2.
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the `predict` subcommand. Returns: its parser."""
    parser = subparsers.add_parser(
        "predict",
        help="detect on DICOM files with an exported model (local, TF Serving gRPC or REST)",
        description="Preprocess DICOMs exactly as in training, run the exported detector and print "
        "its marks in original DICOM pixel coordinates.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--saved-model", metavar="DIR", help="a SavedModel version dir or base path (no server)")
    target.add_argument("--grpc", metavar="HOST:PORT", help="TF Serving gRPC address (e.g. localhost:8500)")
    target.add_argument("--rest", metavar="URL", help="TF Serving REST base URL (e.g. http://localhost:8501)")
    parser.add_argument("--model-name", default="hourglass", help="model name on the server (default hourglass)")
    parser.add_argument("--signature", choices=IMAGE_SIGNATURES, default=None,
                        help="signature to call (default: detect_png for --rest, else serving_default)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=argtypes.positive, default=None, metavar="N",
                       help="model version (default: latest; with --saved-model BASE: BASE/N)")
    which.add_argument("--label", default=None, metavar="NAME",
                       help="TF Serving version label, e.g. stable or canary (models.config version_labels)")
    cut = parser.add_mutually_exclusive_group()
    cut.add_argument("--threshold", type=argtypes.finite, default=None, metavar="T",
                     help="score threshold (default: the export's)")
    cut.add_argument("--operating-point", type=argtypes.positive_number, default=None, metavar="FPI",
                     help="use the threshold recorded at this FPI by hourglass evaluate (e.g. 4.8)")
    parser.add_argument("--long-side", type=argtypes.positive, default=None, metavar="PIXELS",
                        help="override the contract's preprocessing long side (only for exports without "
                             "a metadata signature)")
    parser.add_argument("--timeout", type=argtypes.positive_number, default=30.0, metavar="S",
                        help="seconds for one request, its retries included: one overall deadline (default 30)")
    parser.add_argument("--retries", type=argtypes.non_negative, default=3,
                        help="retries while the server is unavailable, with jittered exponential backoff, "
                             "within --timeout (default 3)")
    parser.add_argument("--max-message-mb", type=argtypes.positive_number, default=64.0, metavar="MB",
                        help="largest request/response in MiB (default 64; TF Serving must allow it too)")
    tls = parser.add_argument_group("TLS (gRPC: ssl_channel_credentials; REST: an https:// URL)")
    tls.add_argument("--tls", action="store_true", help="gRPC over TLS with the system's CAs (implied by the flags below)")
    tls.add_argument("--ca-cert", metavar="PEM", default=None, help="CA bundle to verify the server with")
    tls.add_argument("--client-cert", metavar="PEM", default=None, help="client certificate chain (mutual TLS)")
    tls.add_argument("--client-key", metavar="PEM", default=None, help="its private key (mutual TLS)")
    tls.add_argument("--tls-server-name", metavar="NAME", default=None,
                     help="gRPC: name to verify in the server certificate instead of the host")
    parser.add_argument("--overlay-dir", metavar="DIR", help="write FILE.png overlays (marks on the preprocessed image)")
    parser.add_argument("--dicom-sr", metavar="DIR", default=None,
                        help="write one DICOM Structured Report per image (TID 1500; marks as SCOORD points in "
                             "original pixels) as DIR/<SOPInstanceUID>.SR.dcm")
    parser.add_argument("--dicom-pr", metavar="DIR", default=None,
                        help="write one Grayscale Softcopy Presentation State per image (circles at the marks) "
                             "as DIR/<SOPInstanceUID>.PR.dcm")
    parser.add_argument("files", nargs="+", metavar="FILE", help="DICOM files")
    parser.set_defaults(func=run)
    return parser


# The one place `hourglass predict` maps the library's Python arguments (`ArgumentError`, ``name=``
# in reasons) to its flags.
PREDICT_FLAGS = {
    "saved_model": "--saved-model", "saved_model_dir": "--saved-model", "grpc": "--grpc", "address": "--grpc",
    "rest": "--rest", "url": "--rest", "model_name": "--model-name", "version": "--version", "label": "--label",
    "signature": "--signature", "long_side": "--long-side", "threshold": "--threshold",
    "operating_point": "--operating-point", "timeout": "--timeout", "retries": "--retries",
    "max_message_bytes": "--max-message-mb", "tls": "--tls", "ca_cert": "--ca-cert", "client_cert": "--client-cert",
    "client_key": "--client-key", "server_name": "--tls-server-name",
}


def run(args: argparse.Namespace) -> int:
    """Runs the predictions. Returns: 0, 2 if any file was a bad input, 1 on a server failure."""
    from keras_hourglass.errors import InputError, with_flags

    try:
        return _run(args)
    except InputError as err:
        raise with_flags(err, PREDICT_FLAGS) from None


def _run(args: argparse.Namespace) -> int:
    from keras_hourglass.errors import ArgumentError, InputError, with_flags
    from serving.client import MAX_LONG_SIDE, ServingError, make_client

    if args.long_side is not None and not 16 <= args.long_side <= MAX_LONG_SIDE:
        raise InputError("--long-side", f"must be in [16, {MAX_LONG_SIDE}], got {args.long_side}")
    signature = args.signature or (DETECT_PNG if args.rest else SERVING_DEFAULT)
    from serving.tls import TlsOptions

    tls = TlsOptions(enabled=args.tls, ca_cert=args.ca_cert, client_cert=args.client_cert,
                     client_key=args.client_key, server_name=args.tls_server_name)
    client = make_client(
        tls=tls,
        saved_model=args.saved_model,
        grpc=args.grpc,
        rest=args.rest,
        model_name=args.model_name,
        version=args.version,
        label=args.label,
        signature=signature,
        long_side=args.long_side,
        threshold=args.threshold,
        operating_point=args.operating_point,
        timeout=args.timeout,
        retries=args.retries,
        max_message_bytes=int(args.max_message_mb * 2**20),
    )
    writer = None
    if args.dicom_sr or args.dicom_pr:
        from keras_hourglass.version import __version__
        from serving.dicom_outputs import DicomResultWriter

        writer = DicomResultWriter(args.dicom_sr, args.dicom_pr, algorithm_version=__version__)
    results, failed = [], False
    try:
        client.contract()  # once, before any file: pins the version that answered
        threshold = client.effective_threshold()
        if writer is not None:
            writer.algorithm_version += f" model version {client.model_version}"
        for path in args.files:
            try:
                detection = client.detect_file(path, overlay_dir=args.overlay_dir)
                result = detection.to_json()
                if writer is not None:
                    result.update(writer.write(detection, path))
                results.append(result)
            except InputError as err:
                if isinstance(err, ArgumentError) or not err.path:
                    raise  # a bad argument (unknown model/signature, size limit): stop here
                failed = True
                err = with_flags(err, PREDICT_FLAGS)
                print(f"hourglass predict: error: {escape_controls(err)}", file=sys.stderr)
                results.append({"file": path, "error": err.reason})
    except ServingError as err:
        if isinstance(err, InputError):
            raise
        print(f"hourglass predict: error: {escape_controls(err)}", file=sys.stderr)
        return 1
    finally:
        client.close()
    contract = client.contract()
    try:
        options = contract.read_options()
    except ValueError:  # reported per file already (ServingError)
        options = {}
    summary = {"target": client.target, "model_name": args.model_name, "model_version": client.model_version,
               "label": args.label, "signature": signature, "threshold": threshold,
               "preprocessing": {"long_side": args.long_side or contract.long_side, **options}}
    if args.operating_point is not None:
        summary["operating_point"] = contract.operating_point(args.operating_point)
    print(json.dumps({**summary, "results": results}, indent=2))
    return 2 if failed else 0
