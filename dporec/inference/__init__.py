"""What a trained adapter is for afterwards: recommend (rank candidates), export (one merged model)."""
