resume --missed 10000
