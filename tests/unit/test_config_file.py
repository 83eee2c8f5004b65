"""mesh.toml: every mesh-peer flag settable in the data dir's file (or --config PATH);
the command line wins; unknown keys and wrong types are errors naming the key and file."""

from __future__ import annotations

import argparse

import pytest

from mesh.cli import peer_main
from mesh.cli.configfile import parse_args as parse_with_file
from mesh.config import DEFAULT_HTTP_PORT, DEFAULT_RPC_PORT
from mesh.errors import ConfigError


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def parse(tmp_path, *argv: str):
    return peer_main.parse_args(["--data-dir", str(tmp_path), *argv])


def test_no_file_gives_the_built_in_defaults(tmp_path):
    args = parse(tmp_path)
    assert args.rpc_port == DEFAULT_RPC_PORT and args.http_port == DEFAULT_HTTP_PORT
    assert args.join == [] and args.no_mdns is False
    assert not hasattr(args, "config_file")


def test_the_data_dirs_file_sets_flags_with_dashes_or_underscores(tmp_path):
    write(tmp_path / "mesh.toml", """
rpc-port = 7500
http_port = 7600
name = "kitchen"
join = ["10.0.0.2:7411", "10.0.0.3"]
no-mdns = true
threshold = 1
grace = 2.5
log-level = "debug"
""")
    args = parse(tmp_path)
    assert args.rpc_port == 7500 and args.http_port == 7600 and args.name == "kitchen"
    assert args.join == ["10.0.0.2:7411", "10.0.0.3"] and args.no_mdns is True
    assert args.threshold == 1.0 and isinstance(args.threshold, float) and args.grace == 2.5
    assert args.log_level == "debug" and args.config_file == str(tmp_path / "mesh.toml")
    config = peer_main.config_from_args(args)  # what mesh-peer builds from it
    assert config.rpc_port == 7500 and config.seeds == ("tcp://10.0.0.2:7411", "tcp://10.0.0.3:7411")
    assert config.mdns is False and config.name == "kitchen"


def test_the_command_line_wins_and_replaces_lists(tmp_path):
    write(tmp_path / "mesh.toml", 'rpc-port = 7500\njoin = ["10.0.0.2:7411"]\nname = "file"\nno-mdns = true\n')
    args = parse(tmp_path, "--rpc-port", "7777", "--join", "10.9.9.9:7411")
    assert args.rpc_port == 7777
    assert args.join == ["10.9.9.9:7411"]  # replaced, not appended to
    assert args.name == "file" and args.no_mdns is True  # the rest still from the file


def test_a_switch_set_false_in_the_file_is_as_if_not_given(tmp_path):
    write(tmp_path / "mesh.toml", "no-mdns = false\nno-http = false\n")
    args = parse(tmp_path)
    assert args.no_mdns is False and args.no_http is False


def test_config_flag_reads_another_file_which_may_name_the_data_dir(tmp_path):
    data = tmp_path / "var-lib-mesh"
    cfg = write(tmp_path / "etc.toml", f'data-dir = "{data}"\nrpc-host = "10.0.0.5"\n')
    args = peer_main.parse_args(["--config", str(cfg)])
    assert args.data_dir == str(data) and args.rpc_host == "10.0.0.5"
    assert args.config_file == str(cfg)


def test_a_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        peer_main.parse_args(["--config", str(tmp_path / "nope.toml")])


@pytest.mark.parametrize("text, words", [
    ("rpc-prot = 7411\n", ["unknown key 'rpc-prot'", "did you mean 'rpc-port'"]),
    ("bogus = 1\n", ["unknown key 'bogus'"]),
    ('rpc-port = "7411"\n', ["rpc-port", "expected an integer, got a string"]),
    ("rpc-port = true\n", ["rpc-port", "got a boolean"]),
    ("name = 5\n", ["name", "expected a string"]),
    ('join = "10.0.0.2:7411"\n', ["join", "expected a list"]),
    ("join = [1]\n", ["join", "expected a string"]),
    ('no-mdns = "yes"\n', ["no-mdns", "expected true or false"]),
    ('log-level = "loud"\n', ["log-level", "must be one of"]),
    ("threshold = nan\n", ["threshold", "finite"]),
    ("[rpc]\nport = 1\n", ["'rpc' is a table"]),
    ("rpc-port = 1\nrpc_port = 2\n", ["set the same flag --rpc-port"]),
    ("help = true\n", ["cannot be set in a config file"]),
    ("rpc-port = \n", ["not valid TOML"]),
])
def test_bad_files_name_the_key_and_the_file(tmp_path, text, words):
    path = write(tmp_path / "mesh.toml", text)
    with pytest.raises(ConfigError) as e:
        parse(tmp_path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_mesh_peer_exits_1_with_the_message(tmp_path, capsys):
    write(tmp_path / "mesh.toml", "rpc-prot = 7411\n")
    assert peer_main.main(["--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'rpc-prot'" in err and "mesh.toml" in err


def test_flags_added_later_are_keys_at_once(tmp_path):
    """Generic over the parser: a new flag (as another part may add) needs no list update."""
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--config")
    p.add_argument("--http-token-file", metavar="PATH")
    p.add_argument("--api-rate", type=float, default=1.0)
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--level", type=int, choices=[1, 2, 3], default=1)
    cfg = write(tmp_path / "x.toml", 'http-token-file = "/k"\napi_rate = 3\ntag = ["a", "b"]\nlevel = 2\n')
    args = parse_with_file(p, ["--config", str(cfg), "--tag", "c"], default_path=lambda a: None)
    assert (args.http_token_file, args.api_rate, args.tag, args.level) == ("/k", 3.0, ["c"], 2)
    write(cfg, "level = 7\n")
    with pytest.raises(ConfigError, match="level = 7: must be one of 1, 2, 3"):
        parse_with_file(p, ["--config", str(cfg)], default_path=lambda a: None)


def test_parsing_leaves_the_parser_defaults_intact(tmp_path):
    p = peer_main.build_parser()
    write(tmp_path / "mesh.toml", "rpc-port = 7500\n")
    parse_with_file(p, ["--data-dir", str(tmp_path), "--rpc-port", "1"], default_path=lambda a: tmp_path / "mesh.toml")
    assert p.parse_args([]).rpc_port == DEFAULT_RPC_PORT and p.parse_args([]).join == []


def test_engine_parallel_reaches_the_engine_backend_and_is_checked(tmp_path):
    from mesh.errors import MeshError
    from mesh.peer import load_backend

    args = parse(tmp_path, "--engine-url", "http://127.0.0.1:9/v1", "--engine-model", "m", "--engine-parallel", "1")
    backend = load_backend(peer_main.config_from_args(args))
    assert backend.capabilities.parallel == 1  # what gossip says and the router divides the queue by
    assert peer_main.config_from_args(parse(tmp_path, "--engine-url", "http://127.0.0.1:9/v1",
                                            "--engine-model", "m")).engine_parallel == 4
    with pytest.raises(MeshError, match="--engine-parallel must be 1..256"):
        peer_main.config_from_args(parse(tmp_path, "--engine-url", "http://x/v1", "--engine-model", "m",
                                         "--engine-parallel", "0"))


def test_model_flags_paths_names_budgets_and_the_session_cache(tmp_path):
    from mesh.errors import MeshError
    from mesh.inference.models import default_model_path
    from mesh.peer import load_backend

    smol = str(default_model_path())
    extra = tmp_path / "extra.gguf"
    extra.write_bytes(b"GGUF")
    c = peer_main.config_from_args(parse(tmp_path, "--model", smol, "--model", str(extra), "--model", "gemma-3-270m",
                                         "--auto-pull", "--models-ram", "2", "--keep-alive", "60",
                                         "--session-cache-mb", "64"))
    assert str(c.model_path) == smol and c.extra_models == (extra,) and c.model_names == ("gemma-3-270m",)
    assert c.auto_pull and c.models_ram_bytes == 2 * 10**9 and c.keep_alive_s == 60
    assert c.session_cache_bytes == 64 << 20
    backend = load_backend(c)
    assert backend._args[backend._args.index("--session-cache-bytes") + 1] == str(64 << 20)
    # a first --model that names a store model: nothing is loaded until it is found or pulled
    named = peer_main.config_from_args(parse(tmp_path, "--model", "gemma-3-270m"))
    assert named.model_path is None and named.model_names == ("gemma-3-270m",)
    assert load_backend(named).capabilities.model == ""
    for bad, words in [(("--model", "no/such/file.gguf"), "no model file"), (("--keep-alive", "-1"), "--keep-alive"),
                       (("--models-ram", "0"), "--models-ram"), (("--session-cache-mb", "-1"), "--session-cache-mb")]:
        with pytest.raises(MeshError, match=words):
            peer_main.config_from_args(parse(tmp_path, *bad))


def test_bulk_port_is_a_port_or_off_in_the_file_and_on_the_command_line(tmp_path):
    assert parse(tmp_path).bulk_port == 0  # any free port
    write(tmp_path / "mesh.toml", "bulk-port = 7413\n")
    assert peer_main.config_from_args(parse(tmp_path)).bulk_port == 7413
    write(tmp_path / "mesh.toml", 'bulk-port = "off"\n')
    assert peer_main.config_from_args(parse(tmp_path)).bulk_port is None
    assert parse(tmp_path, "--bulk-port", "0").bulk_port == 0  # the command line wins
    write(tmp_path / "mesh.toml", "bulk-port = 70000\n")
    with pytest.raises(ConfigError, match="bulk-port"):
        parse(tmp_path)
