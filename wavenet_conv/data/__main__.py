"""Summarise or fetch a dataset.

    python -m wavenet_conv.data                # summarise data/names.txt
    python -m wavenet_conv.data --download     # fetch it again from the makemore repository, checking its sha256
"""
from wavenet_conv.data.download import NAMES_SHA256, NAMES_URL, download, sha256_of
from wavenet_conv.data.words import DEFAULT_INPUT, Vocab, read_words, split_words
from wavenet_conv.utils.errors import ArgumentParser, exit_on_user_error


@exit_on_user_error
def main(argv=None):
    parser = ArgumentParser(prog="python -m wavenet_conv.data", description="Fetch and inspect wavenet_conv datasets.")
    parser.add_argument("--download", action="store_true", help="download names.txt and verify its sha256")
    parser.add_argument("--url", default=NAMES_URL, help="where to download from")
    parser.add_argument("--output", "-o", default=DEFAULT_INPUT, help="where to write the downloaded file")
    parser.add_argument("--sha256", default=NAMES_SHA256, help="expected checksum ('' to skip the check)")
    parser.add_argument("--input-file", "-i", default=DEFAULT_INPUT, help="file to summarise when not downloading")
    args = parser.parse_args(argv)
    if args.download:
        path = download(args.url, args.output, args.sha256)
        print(f"wrote {path} (sha256 {sha256_of(path)})")
        return
    words = read_words(args.input_file)
    vocab = Vocab.from_words(words)
    train, val, test = split_words(words)
    print(f"{len(words)} items, vocabulary of {len(vocab)}: {''.join(vocab.itos)!r}")
    print(f"longest item {max(map(len, words))} characters; split {len(train)} / {len(val)} / {len(test)}")


if __name__ == "__main__":
    main()
