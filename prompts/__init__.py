"""The Slovenian prompts: texts, audio in Asterisk's formats, and their manifest.

`prompts.catalog` reads the manifest at run time (standard library only);
`python -m prompts.generate` makes the audio and the manifest (numpy, soundfile, soxr).
"""
