#!/usr/bin/env python3
"""Parquet data files as verl's preprocessing and Hugging Face `datasets` write them, for
tests/suite/parquet_data.rs (tests/fixtures/parquet/). Written with pyarrow; deterministic
(no timestamps in the files), so a rerun writes the same bytes.

  rl_verl.parquet      snappy (pyarrow's default): verl's RL rows. data_source, prompt (a list
                       of {role, content}: one user turn, or a system turn then a user turn),
                       ability, reward_model {style, ground_truth}, extra_info {index, split},
                       images (a list of datasets' Image structs {bytes, path}; the second row
                       embeds tests/fixtures/png16/rgb.png, the third the same bytes twice).
  mmr1_gzip.parquet    gzip: MMR1's schema. id (int64), problem, answer (int64),
                       image (one Image struct, or null), options (a list, or null).
  sft_lz4.parquet      lz4: SFT conversations. messages [{role, content}], system (a string
                       column), meta (a map<string, int64>).
  rl_zstd.parquet      zstd: one RL row, in a codec the engine does not read (its error).

Usage: python3 scripts/make_parquet_fixtures.py   (pip install pyarrow)
"""

import os

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "parquet")
PNG = open(os.path.join(ROOT, "tests", "fixtures", "png16", "rgb.png"), "rb").read()

MSG = pa.struct([("role", pa.string()), ("content", pa.string())])
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write(name, table, compression):
    pq.write_table(table, os.path.join(OUT, name), compression=compression)


def rl_table():
    return pa.table(
        {
            "data_source": ["gsm8k", "chart", "geo"],
            "prompt": pa.array(
                [
                    [{"role": "user", "content": "What is 2+2?"}],
                    [{"role": "user", "content": "<image>How many bars?"}],
                    [
                        {"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": "<image><image>Same picture?"},
                    ],
                ],
                type=pa.list_(MSG),
            ),
            "ability": ["math", "chart", "math"],
            "reward_model": pa.array(
                [
                    {"style": "rule", "ground_truth": "4"},
                    {"style": "rule", "ground_truth": "3"},
                    {"style": "rule", "ground_truth": "yes"},
                ],
                type=pa.struct([("style", pa.string()), ("ground_truth", pa.string())]),
            ),
            "extra_info": pa.array(
                [{"index": 0, "split": "train"}, {"index": 1, "split": "train"}, {"index": 2, "split": "test"}],
                type=pa.struct([("index", pa.int64()), ("split", pa.string())]),
            ),
            "images": pa.array(
                [[], [{"bytes": PNG, "path": "bars.png"}], [{"bytes": PNG, "path": None}, {"bytes": PNG, "path": "b.png"}]],
                type=pa.list_(IMAGE),
            ),
        }
    )


def main():
    os.makedirs(OUT, exist_ok=True)
    write("rl_verl.parquet", rl_table(), "snappy")
    mmr1 = pa.table(
        {
            "id": pa.array([10, 11], type=pa.int64()),
            "problem": ["<image>How many colors are there?", "Compute 6 * 7."],
            "answer": pa.array([3, 42], type=pa.int64()),
            "image": pa.array([{"bytes": PNG, "path": "rgb.png"}, None], type=IMAGE),
            "options": pa.array([["2", "3"], None], type=pa.list_(pa.string())),
        }
    )
    write("mmr1_gzip.parquet", mmr1, "gzip")
    sft = pa.table(
        {
            "messages": pa.array(
                [
                    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                    [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}],
                ],
                type=pa.list_(MSG),
            ),
            "system": ["Be kind.", ""],
            "meta": pa.array([[("turns", 1)], [("turns", 1), ("len", 3)]], type=pa.map_(pa.string(), pa.int64())),
        }
    )
    write("sft_lz4.parquet", sft, "lz4")
    write("rl_zstd.parquet", rl_table().slice(0, 1), "zstd")


if __name__ == "__main__":
    main()
