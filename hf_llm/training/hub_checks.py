"""One request to the Hub before any work: a name that is neither a local path nor on a reachable Hub, or
a push that cannot happen, is refused at once with what to do, instead of after retries or training."""

import functools
import os
from pathlib import Path

from ..folders import looks_like_local_path
from .errors import RecipeError

# Seconds to wait for the Hub's answer; one attempt, no retries.
HUB_TIMEOUT = 10


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now: offline, the libraries use their caches and never ask the Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_hub_name(name: str, repo_type: str, flag: str) -> None:
    """Refuse `name` (a `repo_type` "model" or "dataset" id given by `flag`) unless it is a local path or
    the Hub, asked once, knows it. Offline, or with a copy in the local cache, nothing is asked."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    if looks_like_local_path(name) or Path(name).expanduser().exists() or hub_offline():
        return  # a path: the loader says whether it exists
    try:
        if try_to_load_from_cache(name, "README.md" if repo_type == "dataset" else "config.json", repo_type=repo_type):
            return
    except HFValidationError:
        raise RecipeError(f"{flag} {name}: no such local path, and not a valid Hub id (owner/name). Check the path.") from None
    try:
        _ask_hub(name, repo_type)
    except GatedRepoError:
        return  # it exists; loading it says how to get access
    except RepositoryNotFoundError:
        raise RecipeError(
            f"{flag} {name}: no such local path, and the Hub has no {repo_type} of that name (or it is private: "
            f"log in with `hf auth login`). Check the spelling or the path."
        ) from None
    except Exception as err:  # noqa: BLE001 - see _unreachable
        raise RecipeError(_unreachable(f"{flag} {name}: no such local path, and", err, "or give a local path")) from None


@functools.lru_cache
def _ask_hub(name: str, repo_type: str) -> None:
    """One request: does the Hub know `name`? Raises what huggingface_hub raises if not. An answer that
    it does is kept, so a model named for both the weights and the tokenizer is asked about once."""
    from huggingface_hub import HfApi

    (HfApi().dataset_info if repo_type == "dataset" else HfApi().model_info)(name, timeout=HUB_TIMEOUT)


def check_push_possible(token: str | None) -> None:
    """Before training: `--push_to_hub` needs a token the Hub accepts, and the Hub must answer."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        HfApi(token=token).whoami()
    except LocalTokenNotFoundError:
        raise RecipeError(
            "--push_to_hub needs a Hub token: log in with `hf auth login`, set HF_TOKEN, or pass --hub_token. "
            "Or drop --push_to_hub to keep the run local."
        ) from None
    except HfHubHTTPError as err:
        raise RecipeError(f"--push_to_hub: the Hub refused the token ({err}). Log in again with `hf auth login`.") from None
    except Exception as err:  # noqa: BLE001 - see _unreachable
        raise RecipeError(_unreachable("--push_to_hub:", err, "or drop --push_to_hub to keep the run local")) from None


def _unreachable(what: str, err: Exception, alternative: str) -> str:
    # Whatever else the one request raised (the HTTP client's connection, DNS, TLS or timeout errors, whose
    # classes belong to huggingface_hub's private transport): the message keeps its type and text.
    return (f"{what} the Hub cannot be reached ({type(err).__name__}: {err}). Check the network, "
            f"set HF_HUB_OFFLINE=1 to use what is cached, {alternative}.")
