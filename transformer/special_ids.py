"""The token ids every vocabulary here reserves (SentencePiece is trained with these)."""

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # padding (also the decoder's start symbol), end, unknown
