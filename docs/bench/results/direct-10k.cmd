direct --connections 400 --rate 10000 --duration 20 --warmup 3
