direct --connections 100 --rate 20000 --duration 15 --warmup 3
