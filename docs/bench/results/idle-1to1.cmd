idle --connections 19000 --duration 10 --open-timeout 120
