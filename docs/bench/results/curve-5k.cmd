direct --connections 100 --rate 5000 --duration 15 --warmup 3
