#!/bin/sh
# Regenerates the speech fixtures in this directory. Needs espeak-ng and sox; the tests
# only read the committed files and need neither.
#
#   hello.wav              espeak-ng as it writes: 22.05 kHz, mono, 16-bit PCM
#   numbers.wav            espeak-ng as it writes: 22.05 kHz, mono, 16-bit PCM
#   hello_44k_stereo.wav   hello.wav converted by sox to 44.1 kHz, 2 identical channels
#   hello_16k.flac         hello.wav converted by sox to 16 kHz FLAC
#
# Every clip is shorter than the 4.04 s the model reads, so scoring repeats it. The
# three "hello" files carry one utterance through three decode paths, which lets the
# tests compare them. Dither is off (-D) so sox's output does not depend on its RNG;
# espeak-ng's output may differ between its versions (the version used is printed).
set -eu
cd "$(dirname "$0")"
espeak-ng --version
sox --version
espeak-ng -w hello.wav "Hello there."
espeak-ng -w numbers.wav "One, two, three."
sox -D hello.wav -r 44100 -c 2 hello_44k_stereo.wav
sox -D hello.wav -r 16000 hello_16k.flac
soxi hello.wav numbers.wav hello_44k_stereo.wav hello_16k.flac | grep -E "Input File|Channels|Sample Rate|Duration"
du -ch hello.wav numbers.wav hello_44k_stereo.wav hello_16k.flac | tail -1
